-- Run by test_nvim_live.py in `nvim --headless --clean`: open a config, :HbCompile, wait for the result,
-- :HbSimilarity (float) and :HbSimilarity! (quickfix), collect inlay hints and diagnostics, write JSON, quit.
local env = vim.env
local result = { errors = {} }

local function finish()
  local f = assert(io.open(env.HBLSP_OUT, 'w'))
  f:write(vim.json.encode(result))
  f:close()
  vim.cmd('qa!')
end

local ok, err = pcall(function()
  vim.opt.runtimepath:prepend(env.HBLSP_PLUGIN)
  vim.cmd('runtime! plugin/hblsp.lua')
  vim.lsp.config('hblsp', { cmd = { env.HBLSP_PYTHON, '-m', 'hblsp' } })
  vim.lsp.enable('hblsp')

  vim.cmd.edit(vim.fn.fnameescape(env.HBLSP_CONFIG))
  local buf = vim.api.nvim_get_current_buf()
  local uri = vim.uri_from_bufnr(buf)
  result.attached = vim.wait(30000, function()
    return #vim.lsp.get_clients({ bufnr = buf, name = 'hblsp' }) > 0
  end, 20)
  result.commands = vim.tbl_keys(vim.api.nvim_buf_get_commands(buf, {}))
  table.sort(result.commands)
  result.inlay_enabled = vim.lsp.inlay_hint.is_enabled({ bufnr = buf })

  local hblsp = require('hblsp')
  vim.cmd('HbCompile')
  result.got_result = vim.wait(120000, function() return hblsp.results[uri] ~= nil end, 20)
  local compiled = hblsp.results[uri] or {}
  result.ok = compiled.ok
  result.table = compiled.table

  -- the float
  vim.cmd('HbSimilarity')
  local win = vim.api.nvim_get_current_win()
  result.float_relative = vim.api.nvim_win_get_config(win).relative
  result.float_lines = vim.api.nvim_buf_get_lines(vim.api.nvim_win_get_buf(win), 0, -1, false)
  vim.cmd('close')

  -- the quickfix list
  vim.cmd('HbSimilarity!')
  result.quickfix = {}
  for _, item in ipairs(vim.fn.getqflist()) do
    table.insert(result.quickfix, { lnum = item.lnum, type = item.type, text = item.text })
  end
  vim.cmd('cclose')
  vim.api.nvim_set_current_buf(buf)

  -- what the server said about the run in this buffer
  result.got_hints = vim.wait(30000, function() return #vim.lsp.inlay_hint.get({ bufnr = buf }) >= 2 end, 20)
  result.hints = {}
  for _, h in ipairs(vim.lsp.inlay_hint.get({ bufnr = buf })) do
    local label = h.inlay_hint.label
    if type(label) == 'table' then
      label = table.concat(vim.tbl_map(function(part) return part.value end, label))
    end
    table.insert(result.hints, { line = h.inlay_hint.position.line, character = h.inlay_hint.position.character,
      label = label })
  end
  table.sort(result.hints, function(a, b) return a.character < b.character end)
  result.got_diagnostic = vim.wait(30000, function()
    for _, d in ipairs(vim.diagnostic.get(buf)) do
      if d.code == 'output-cosine' then
        return true
      end
    end
    return false
  end, 20)
  result.diagnostics = {}
  for _, d in ipairs(vim.diagnostic.get(buf)) do
    table.insert(result.diagnostics, { lnum = d.lnum, col = d.col, severity = d.severity, code = d.code,
      message = d.message })
  end
end)
if not ok then
  table.insert(result.errors, tostring(err))
end
finish()
