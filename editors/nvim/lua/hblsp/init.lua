--- hblsp in Neovim: the buffer commands and the similarity table view.
---
--- The server does the work (docs/protocol.md); this module only renders what it sends:
--- `hblsp/compileResult` (kept per config), `:HbCompile` / `:HbCancel` (`client:exec_cmd` of the
--- server's `hblsp.compile` / `hblsp.cancel`), `:HbSimilarity` (the table in a float) and
--- `:HbSimilarity!` (the nodes in the quickfix list, those under the threshold as warnings).
local M = {}

---@type table<string, table> uri -> the last hblsp/compileResult params
M.results = {}

local COLUMNS = { 'Node', 'NodeType', 'ON', 'Threshold', 'Calibrated Cosine', 'Quantized Cosine', 'Output Data Type' }
local OUTPUT_COLUMNS = { 'TensorName', 'Calibrated Cosine', 'Quantized Cosine' }

local function num(v, digits)
  if type(v) ~= 'number' then
    return '--'
  end
  return string.format('%.' .. (digits or 6) .. 'f', v)
end

local function cosine(row)
  if type(row.quantized_cosine) == 'number' then
    return row.quantized_cosine
  end
  return row.calibrated_cosine or row.cosine
end

local function thresholds(result)
  local t = result.thresholds
  return (t and t ~= vim.NIL) and t or { node = 0.99, output = 0.8 }
end

-- rows of cells -> lines with every column padded to its widest cell
local function align(rows)
  local widths = {}
  for _, row in ipairs(rows) do
    for i, cell in ipairs(row) do
      widths[i] = math.max(widths[i] or 0, vim.fn.strdisplaywidth(cell))
    end
  end
  local lines = {}
  for _, row in ipairs(rows) do
    local cells = {}
    for i, cell in ipairs(row) do
      cells[i] = cell .. string.rep(' ', widths[i] - vim.fn.strdisplaywidth(cell))
    end
    table.insert(lines, (table.concat(cells, '  '):gsub('%s+$', '')))
  end
  return lines
end

--- The lines of the similarity view (the same columns as hb_compile's console table).
---@param result table hblsp/compileResult params
---@return string[]
function M.render(result)
  local name = vim.fn.fnamemodify(vim.uri_to_fname(result.uri), ':t')
  local status = result.cancelled and 'cancelled' or (result.ok and 'ok' or 'failed')
  local lines = { string.format('%s: %s in %s s', name, status, num(result.seconds, 2)) }
  local stages = {}
  for _, s in ipairs(result.stages or {}) do
    local reason = (s.reason and s.reason ~= vim.NIL and s.reason ~= '') and (' (' .. s.reason .. ')') or ''
    table.insert(stages, string.format('  %s: %s%s', s.name, s.status, reason))
  end
  vim.list_extend(lines, stages)
  for _, p in ipairs(result.problems or {}) do
    if p.severity == 'error' then
      table.insert(lines, 'error: ' .. p.message)
    end
  end
  local tbl = result.table
  if tbl == nil or tbl == vim.NIL then
    table.insert(lines, '')
    table.insert(lines, 'No similarity table: the run stopped before the report stage.')
    return lines
  end
  local limit = thresholds(result)
  table.insert(lines, '')
  table.insert(lines, 'The quantized model output:')
  local rows = { OUTPUT_COLUMNS }
  for _, o in ipairs(tbl.outputs or {}) do
    local mark = (cosine(o) or 1) < limit.output and '  < ' .. limit.output or ''
    table.insert(rows, { o.tensor, num(o.cosine), num(o.quantized_cosine) .. mark })
  end
  vim.list_extend(lines, align(rows))
  table.insert(lines, '')
  table.insert(lines, 'The main quantized node information:')
  rows = { COLUMNS }
  for _, n in ipairs(tbl.nodes or {}) do
    local mark = (cosine(n) or 1) < limit.node and '  < ' .. limit.node or ''
    table.insert(rows, { n.node, n.node_type, n.on, num(n.threshold), num(n.calibrated_cosine),
      num(n.quantized_cosine) .. mark, n.output_dtype })
  end
  vim.list_extend(lines, align(rows))
  return lines
end

--- Show the table in a floating window (q or <Esc> closes it); returns its buffer.
function M.show_float(result)
  local lines = M.render(result)
  local width = 0
  for _, l in ipairs(lines) do
    width = math.max(width, vim.fn.strdisplaywidth(l))
  end
  local buf = vim.api.nvim_create_buf(false, true)
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, lines)
  vim.bo[buf].modifiable = false
  vim.bo[buf].bufhidden = 'wipe'
  vim.bo[buf].filetype = 'hbsimilarity'
  width = math.min(width + 1, math.max(vim.o.columns - 4, 20))
  local height = math.min(#lines, math.max(vim.o.lines - 4, 5))
  vim.api.nvim_open_win(buf, true, {
    relative = 'editor', style = 'minimal', border = 'rounded', title = ' hb_compile similarity ',
    width = width, height = height,
    row = math.floor((vim.o.lines - height) / 2), col = math.floor((vim.o.columns - width) / 2),
  })
  for _, key in ipairs({ 'q', '<Esc>' }) do
    vim.keymap.set('n', key, '<cmd>close<cr>', { buffer = buf, nowait = true })
  end
  return buf
end

-- the line of the config where `name` is written, else the model line, else the first
local function line_of(bufnr, name, fallback)
  for i, line in ipairs(vim.api.nvim_buf_get_lines(bufnr, 0, -1, false)) do
    if line:find(name, 1, true) then
      return i
    end
  end
  return fallback
end

--- Every node and output as a quickfix entry on the config; those under the thresholds are warnings.
function M.quickfix(result, bufnr)
  local tbl = result.table
  local items = {}
  if tbl == nil or tbl == vim.NIL then
    vim.fn.setqflist({}, ' ', { title = 'hb_compile similarity: no table', items = items })
    return items
  end
  local limit = thresholds(result)
  local model_line = 1
  for i, line in ipairs(vim.api.nvim_buf_get_lines(bufnr, 0, -1, false)) do
    if line:match('^%s*onnx_model%s*:') or line:match('^%s*caffe_model%s*:') then
      model_line = i
      break
    end
  end
  for _, o in ipairs(tbl.outputs or {}) do
    table.insert(items, { bufnr = bufnr, lnum = model_line, type = (cosine(o) or 1) < limit.output and 'W' or 'I',
      text = string.format('output %s: Quantized Cosine %s (calibrated %s)', o.tensor, num(o.quantized_cosine),
        num(o.cosine)) })
  end
  for _, n in ipairs(tbl.nodes or {}) do
    local lnum = model_line
    for _, member in ipairs(n.nodes or { n.node }) do
      local found = line_of(bufnr, member, nil)
      if found then
        lnum = found
        break
      end
    end
    table.insert(items, { bufnr = bufnr, lnum = lnum, type = (cosine(n) or 1) < limit.node and 'W' or 'I',
      text = string.format('%s (%s, %s): Quantized Cosine %s, Calibrated Cosine %s, threshold %s, %s', n.node,
        n.node_type, n.on, num(n.quantized_cosine), num(n.calibrated_cosine), num(n.threshold), n.output_dtype) })
  end
  vim.fn.setqflist({}, ' ', { title = 'hb_compile similarity', items = items })
  return items
end

--- `hblsp/compileResult` handler: keep the result; say so when a run failed.
function M.on_result(_, result)
  if type(result) ~= 'table' or type(result.uri) ~= 'string' then
    return
  end
  M.results[result.uri] = result
  if not result.ok and not result.cancelled then
    local first = 'failed'
    for _, p in ipairs(result.problems or {}) do
      if p.severity == 'error' then
        first = p.message
        break
      end
    end
    vim.notify('hb_compile: ' .. vim.fn.fnamemodify(vim.uri_to_fname(result.uri), ':t') .. ': ' .. first,
      vim.log.levels.WARN)
  end
end

-- the last result of a buffer: kept here, else asked of the server (`hblsp.showTable`)
local function with_result(client, bufnr, fn)
  local uri = vim.uri_from_bufnr(bufnr)
  if M.results[uri] then
    return fn(M.results[uri])
  end
  client:exec_cmd({ title = 'hb_compile table', command = 'hblsp.showTable', arguments = { { uri = uri } } },
    { bufnr = bufnr }, function(err, result)
      if err or type(result) ~= 'table' then
        vim.notify('hb_compile: no result yet for this config; run :HbCompile', vim.log.levels.INFO)
        return
      end
      M.results[uri] = result
      fn(result)
    end)
end

--- on_attach: buffer commands and inlay hints (the cosine beside every node name).
function M.attach(client, bufnr)
  local function command(name, fn, opts)
    vim.api.nvim_buf_create_user_command(bufnr, name, fn, opts or {})
  end
  command('HbCompile', function()
    client:exec_cmd({ title = 'hb_compile', command = 'hblsp.compile',
      arguments = { { uri = vim.uri_from_bufnr(bufnr) } } },
      { bufnr = bufnr })
  end, { desc = 'hb_compile this config now (hblsp)' })
  command('HbCancel', function()
    client:exec_cmd({ title = 'hb_compile cancel', command = 'hblsp.cancel',
      arguments = { { uri = vim.uri_from_bufnr(bufnr) } } }, { bufnr = bufnr })
  end, { desc = 'Stop the running hb_compile of this config' })
  command('HbSimilarity', function(args)
    with_result(client, bufnr, function(result)
      if args.bang then
        M.quickfix(result, bufnr)
        vim.cmd('copen')
      else
        M.show_float(result)
      end
    end)
  end, { bang = true, desc = 'Similarity table of the last run (! for the quickfix list)' })
  if vim.lsp.inlay_hint then
    vim.lsp.inlay_hint.enable(true, { bufnr = bufnr })
  end
end

return M
