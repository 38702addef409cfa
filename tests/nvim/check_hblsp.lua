-- Run by test_nvim.py in `nvim --headless --clean`: load editors/nvim, open configs, let hblsp attach,
-- collect what vim.lsp / vim.diagnostic see, write it as JSON, quit. Inputs come from the environment.
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

  -- a YAML file that is not a config: filetype yaml, hblsp never attaches
  vim.cmd.edit(vim.fn.fnameescape(env.HBLSP_OTHER))
  result.other_filetype = vim.bo.filetype

  -- a config named by its first line
  vim.cmd.edit(vim.fn.fnameescape(env.HBLSP_MODELINE))
  result.modeline_filetype = vim.bo.filetype

  -- the broken config
  vim.cmd.edit(vim.fn.fnameescape(env.HBLSP_CONFIG))
  local buf = vim.api.nvim_get_current_buf()
  result.filetype = vim.bo[buf].filetype
  result.attached = vim.wait(30000, function()
    return #vim.lsp.get_clients({ bufnr = buf, name = 'hblsp' }) > 0
  end, 20)
  local client = vim.lsp.get_clients({ bufnr = buf, name = 'hblsp' })[1]
  result.position_encoding = client and client.offset_encoding or nil
  result.got_diagnostics = vim.wait(30000, function()
    return #vim.diagnostic.get(buf) >= tonumber(env.HBLSP_EXPECT_COUNT)
  end, 20)
  result.diagnostics = {}
  for _, d in ipairs(vim.diagnostic.get(buf)) do
    table.insert(result.diagnostics, {
      lnum = d.lnum, col = d.col, end_lnum = d.end_lnum, end_col = d.end_col,
      severity = d.severity, message = d.message, code = d.code, source = d.source,
    })
  end
  table.sort(result.diagnostics, function(a, b) return a.lnum < b.lnum end)

  -- completion where the cursor would be: after `input_type_rt: ` (line and column from the test)
  local line, character = tonumber(env.HBLSP_COMPLETE_LINE), tonumber(env.HBLSP_COMPLETE_CHAR)
  local params = { textDocument = { uri = vim.uri_from_bufnr(buf) }, position = { line = line, character = character } }
  local responses = vim.lsp.buf_request_sync(buf, 'textDocument/completion', params, 20000) or {}
  result.completion = {}
  for _, response in pairs(responses) do
    local items = response.result and (response.result.items or response.result) or {}
    for _, item in ipairs(items) do
      table.insert(result.completion, item.label)
    end
  end

  -- the other buffers: attached only to the modeline config
  result.attached_other = #vim.lsp.get_clients({ bufnr = vim.fn.bufnr(env.HBLSP_OTHER), name = 'hblsp' }) > 0
  result.attached_modeline = #vim.lsp.get_clients({ bufnr = vim.fn.bufnr(env.HBLSP_MODELINE), name = 'hblsp' }) > 0
end)
if not ok then
  table.insert(result.errors, tostring(err))
end
finish()
