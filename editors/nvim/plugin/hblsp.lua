-- Filetype `yaml.hbcfg` for hb_compile configs: by name, or by a first-line comment naming the tool.
-- The compound filetype keeps YAML syntax and indent, and lets `lsp/hblsp.lua` attach only here.
if vim.g.loaded_hblsp then
  return
end
vim.g.loaded_hblsp = true

local MODELINE = { 'hb_compile', 'hb_mapper', 'hblsp', 'hbcompile' }

-- nil when the first line does not name the tool: detection goes on (to plain `yaml`)
local function by_first_line(_, bufnr)
  local first = (vim.api.nvim_buf_get_lines(bufnr, 0, 1, false)[1] or ''):lower()
  if first:match('^%s*#') then
    for _, word in ipairs(MODELINE) do
      if first:find(word, 1, true) then
        return 'yaml.hbcfg'
      end
    end
  end
end

vim.filetype.add({
  pattern = {
    ['.*%.hb%.ya?ml'] = 'yaml.hbcfg',
    ['.*hb_compile.*%.ya?ml'] = 'yaml.hbcfg',
    ['.*hb_mapper.*%.ya?ml'] = 'yaml.hbcfg',
    ['.*hb_config.*%.ya?ml'] = 'yaml.hbcfg',
    ['.*%.ya?ml'] = by_first_line, -- non-negative priority: tried before the `yaml` extension
  },
})
