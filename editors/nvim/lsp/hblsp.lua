---@brief
---
--- hblsp: the language server of hbcompile, for hb_compile / hb_mapper YAML configs.
--- Diagnostics in hb_compile's words on the exact key or value, completion of keys, enum values,
--- model input and node names and paths, hover docs, quick fixes, outline and folding; and the
--- live recompile: saving a config without errors compiles it (only the stages whose inputs
--- changed run), the model and calibration folders are watched, and the results come back as
--- diagnostics (output cosine on the model line, nodes under the threshold), inlay hints (the
--- cosine beside every node name) and the similarity table.
---
--- Install hbcompile (`pip install hbcompile`, which provides the `hblsp` command), add this
--- folder to 'runtimepath' (or use your plugin manager), then:
--- ```lua
--- vim.lsp.enable('hblsp')
--- ```
--- Configs are recognised by name (`*.hb.yaml`, `*.hb.yml`, `*hb_compile*.yaml`, ...) or by a
--- first-line comment naming the tool (`# hb_compile config`): see `plugin/hblsp.lua`, which gives
--- them the filetype `yaml.hbcfg` (YAML highlighting stays).
---
--- Buffer commands: `:HbCompile` (compile now), `:HbCancel`, `:HbSimilarity` (the table of the
--- last run in a float; `:HbSimilarity!` puts every node in the quickfix list).
---
--- Settings (sent with `workspace/configuration`, all optional):
--- ```lua
--- vim.lsp.config('hblsp', { settings = { hblsp = {
---   debounceMs = 150,          -- wait this long after the last keystroke before checking
---   filePatterns = { '*.hb.yaml', '*.hb.yml', '*hb_compile*.yaml' },
---   modeline = true,           -- honour a first-line `# hb_compile` comment
---   checkFiles = true,         -- check that model files and calibration folders exist
---   maxModelMegabytes = 1024,  -- larger models are not read (model-aware checks off)
---   completionLimit = 500,     -- most model node names offered at once
---   compileOnSave = true,      -- saving a config without errors compiles it
---   watchFiles = true,         -- re-run a compiled config when its model / calibration files change,
---                              -- re-check an open config when a file it names appears or goes
---   watchDelayMs = 300,        -- file events closer than this are one change
---   nodeCosineThreshold = 0.99,  -- nodes under this Quantized Cosine are listed in a warning
---   outputCosineThreshold = 0.8, -- outputs under this one too
--- } } })
--- ```
return {
  -- the console script, not `python -m hblsp`: -m would put the project root (the server's cwd)
  -- first on sys.path, where a project's own engine.py would replace hbcompile's engine
  cmd = { 'hblsp' },
  filetypes = { 'yaml.hbcfg' },
  root_markers = { '.git' },
  settings = { hblsp = vim.empty_dict() },
  handlers = {
    ['hblsp/compileResult'] = function(err, result, ctx)
      require('hblsp').on_result(err, result, ctx)
    end,
  },
  on_attach = function(client, bufnr)
    require('hblsp').attach(client, bufnr)
  end,
}
