"""Train the bundled digits CNN and export `digits.onnx` (a one-off; its outputs are committed).

Run it in a separate venv so the project venv stays as CI builds it (torch only lives there):

    python3 -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.13.0 scikit-learn onnx onnxruntime numpy
    cd examples/digits && /tmp/torchvenv/bin/python train_digits.py

It trains on scikit-learn's bundled digits (see `digits_data.py`: 32x32 uint8 images, the fixed
1297 / 500 split) with the input divided by 255: the float ONNX takes `x / 255`, and the config's
`scale_value: 0.00392156862745098` makes hb_compile insert that normalization. The network is
tiny but meant to exercise the toolchain: unfolded BatchNorms (exported with
`do_constant_folding=False`) for the optimize stage to fold, ReLU / HardSwish / SiLU
activations, a residual Add, GlobalAveragePool, Flatten and Gemm. It writes `digits.onnx`
(checked with onnx.checker; onnxruntime must match torch) and `metrics.json`, whose held-out
accuracy is measured in onnxruntime.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from digits_data import IMAGE_SIZE, load_split
from torch import nn

HERE = Path(__file__).resolve().parent
ONNX_PATH = HERE / "digits.onnx"
METRICS_PATH = HERE / "metrics.json"
SEED = 0
EPOCHS = 40
BATCH = 64
LEARNING_RATE = 3e-3
OPSET = 17


def conv_bn(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    """A 3x3 convolution without bias followed by BatchNorm (the pair fold_bn merges)."""
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout)]


class ResidualBlock(nn.Module):
    """Conv+BN+ReLU, Conv+BN, Add the input, ReLU: the graph's one skip connection."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*conv_bn(channels, channels), nn.ReLU(), *conv_bn(channels, channels))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + x)


class DigitsNet(nn.Module):
    """1x1x32x32 normalized grayscale -> 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn(1, 8), nn.ReLU(),
            *conv_bn(8, 16, stride=2), nn.Hardswish(),
            ResidualBlock(16),
            *conv_bn(16, 32, stride=2), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.dropout = nn.Dropout(0.2)
        self.classifier = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.features(x)))


def normalized(images: np.ndarray) -> torch.Tensor:
    """uint8 camera images -> the float model's input, x / 255."""
    return torch.from_numpy(images.astype(np.float32) / 255.0)


def shifted(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 2 pixels (zero fill), so the net does not learn exact positions."""
    out = torch.zeros_like(batch)
    for i in range(batch.shape[0]):
        dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=generator))
        src = batch[i, :, max(0, -dy):IMAGE_SIZE - max(0, dy), max(0, -dx):IMAGE_SIZE - max(0, dx)]
        out[i, :, max(0, dy):max(0, dy) + src.shape[1], max(0, dx):max(0, dx) + src.shape[2]] = src
    return out


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Adam with a cosine schedule over a fixed number of epochs; deterministic given SEED."""
    generator = torch.Generator().manual_seed(SEED)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE, weight_decay=1e-4)
    steps_per_epoch = (len(images) + BATCH - 1) // BATCH
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, EPOCHS * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(EPOCHS):
        order = torch.randperm(len(images), generator=generator)
        total = 0.0
        for start in range(0, len(images), BATCH):
            idx = order[start:start + BATCH]
            loss = loss_fn(model(shifted(images[idx], generator)), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        if epoch % 10 == 9 or epoch == EPOCHS - 1:
            print(f"epoch {epoch + 1:3d}  loss {total / len(images):.4f}")


def export(model: nn.Module) -> None:
    """Legacy TorchScript export, BN left unfolded, static 1x1x32x32 input."""
    model.eval()
    torch.onnx.export(
        model,
        (torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE),),
        str(ONNX_PATH),
        input_names=["input"],
        output_names=["logits"],
        opset_version=OPSET,
        do_constant_folding=False,
        training=torch.onnx.TrainingMode.EVAL,
        dynamo=False,
    )
    onnx.checker.check_model(onnx.load(str(ONNX_PATH)), full_check=True)


def onnx_logits(images: np.ndarray) -> np.ndarray:
    """Run digits.onnx one image at a time (its batch is fixed to 1)."""
    session = ort.InferenceSession(str(ONNX_PATH), providers=["CPUExecutionProvider"])
    x = images.astype(np.float32) / 255.0
    return np.concatenate([session.run(["logits"], {"input": x[i:i + 1]})[0] for i in range(len(x))])


def main() -> None:
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    split = load_split()
    model = DigitsNet()
    train(model, normalized(split.train_images), torch.from_numpy(split.train_labels))
    export(model)

    with torch.no_grad():
        torch_logits = model(normalized(split.heldout_images)).numpy()
    ort_logits = onnx_logits(split.heldout_images)
    max_diff = float(np.abs(torch_logits - ort_logits).max())
    assert max_diff < 1e-4, f"onnxruntime differs from torch by {max_diff}"
    assert (ort_logits.argmax(1) == torch_logits.argmax(1)).all()

    correct = int((ort_logits.argmax(1) == split.heldout_labels).sum())
    model_proto = onnx.load(str(ONNX_PATH))
    metrics = {
        "heldout_samples": len(split.heldout_labels),
        "heldout_correct": correct,
        "heldout_top1": round(correct / len(split.heldout_labels), 4),
        "measured_in": f"onnxruntime {ort.__version__} (float digits.onnx, input x/255)",
        "train_samples": len(split.train_labels),
        "torch_vs_onnxruntime_max_abs_diff": max_diff,
        "opset": OPSET,
        "onnx_bytes": ONNX_PATH.stat().st_size,
        "op_types": sorted({node.op_type for node in model_proto.graph.node}),
        "trained_with": f"torch {torch.__version__}, seed {SEED}, {EPOCHS} epochs",
    }
    METRICS_PATH.write_text(json.dumps(metrics, indent=2) + "\n")
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
