"""Integer lowering of the `.bc`, one module per op family; `registry` says which op goes where.

builder   the program under construction: nodes, constants, a tensor's integer and float forms
encoding  how a tensor is held as integers (uint8/128, int16, int32) and QuantizeLinear in numpy
conv      Conv / Gemm / MatMul and the conv fusion groups      qlinear  Add, Mul, Concat, Softmax, pools
layout    ops on codes (Reshape … MaxPool, Resize nearest, Pad, clamps)
lut       lookup-table activations                            emulate  CPU islands, float kernels
"""
