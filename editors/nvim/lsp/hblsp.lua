---@brief
---
--- hblsp: the language server of hbcompile, for hb_compile / hb_mapper YAML configs.
--- Diagnostics in hb_compile's words on the exact key or value, completion of keys, enum values,
--- model input and node names and paths, hover docs, quick fixes, outline and folding.
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
--- Settings (sent with `workspace/configuration`, all optional):
--- ```lua
--- vim.lsp.config('hblsp', { settings = { hblsp = {
---   debounceMs = 150,          -- wait this long after the last keystroke before checking
---   filePatterns = { '*.hb.yaml', '*.hb.yml', '*hb_compile*.yaml' },
---   modeline = true,           -- honour a first-line `# hb_compile` comment
---   checkFiles = true,         -- check that model files and calibration folders exist
---   maxModelMegabytes = 1024,  -- larger models are not read (model-aware checks off)
---   completionLimit = 500,     -- most model node names offered at once
--- } } })
--- ```
return {
  cmd = { 'hblsp' },
  filetypes = { 'yaml.hbcfg' },
  root_markers = { '.git' },
  settings = { hblsp = vim.empty_dict() },
}
