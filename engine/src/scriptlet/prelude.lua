-- ecelerity's scriptlet prelude: run once in every shard's Lua state
-- before the operator's scripts. It keeps the registered modules, calls
-- their callouts in registration order (Momentum's dispatch), and maps
-- Momentum's require() names onto the msys table the engine built.
-- Nothing here is per message: a call's state is its vctx/msg objects,
-- found from the running coroutine (many sessions interleave on a state).

local msys = msys
local core = msys.core
local CONT, DONE = core.VALIDATE_CONT, core.VALIDATE_DONE
local modules = {}
local by_name = {}
local current = setmetatable({}, { __mode = "k" })

local CALLOUTS = {
  validate_connect = true, validate_ehlo = true, validate_mailfrom = true,
  validate_rcptto = true, validate_data = true, validate_data_spool = true,
  validate_data_spool_each_rcpt = true, validate_set_binding = true,
  core_final_validation = true, init = true, deinit = true,
  log_delivery = true, log_transfail = true, log_permfail = true,
}

function msys.registerModule(name, tbl)
  if type(name) ~= "string" or type(tbl) ~= "table" then
    error("msys.registerModule(name, table): bad arguments", 2)
  end
  local usable = false
  for key, value in pairs(tbl) do
    if CALLOUTS[key] and type(value) == "function" then usable = true end
  end
  if not usable then
    error("no usable methods found for module " .. name .. " in registerModule call", 2)
  end
  if by_name[name] then
    modules[by_name[name]].tbl = tbl
  else
    modules[#modules + 1] = { name = name, tbl = tbl }
    by_name[name] = #modules
  end
end

-- The callouts some module defines (the engine skips Lua for the others).
function msys._callouts()
  local found = {}
  for _, m in ipairs(modules) do
    for key, value in pairs(m.tbl) do
      if CALLOUTS[key] and type(value) == "function" then found[key] = true end
    end
  end
  return found
end

-- Runs every module's init(); a false return fails the load.
function msys._init()
  for _, m in ipairs(modules) do
    if type(m.tbl.init) == "function" and m.tbl.init(m.tbl) == false then
      error("module " .. m.name .. ": init() failed")
    end
  end
end

-- One phase: each module's callout in order; VALIDATE_DONE stops the
-- phase. A callout that returns nothing is an error (Momentum logs
-- "<callout> error: (null)").
local function phase(callout, vctx, ...)
  for _, m in ipairs(modules) do
    local f = m.tbl[callout]
    if f then
      local r = f(m.tbl, ...)
      if r == nil then error(callout .. " error: (null) (module " .. m.name .. " returned nothing)") end
      if r == DONE then return DONE end
      if vctx:_decided() then return DONE end
    end
  end
  return CONT
end

function msys._dispatch(callout, vctx, ...)
  current[coroutine.running()] = vctx
  return phase(callout, vctx, ...)
end

-- End of data: the message phases in Momentum's order; a reply set in
-- one ends them all.
function msys._dispatch_data(msg, ac, vctx, rcpts)
  current[coroutine.running()] = vctx
  phase("validate_data", vctx, msg, ac, vctx)
  if vctx:_decided() then return end
  phase("validate_data_spool", vctx, msg, ac, vctx)
  if vctx:_decided() then return end
  for i = 1, rcpts do
    msg:_select_rcpt(i)
    phase("validate_data_spool_each_rcpt", vctx, msg, ac, vctx)
    if vctx:_decided() then return end
  end
  msg:_select_rcpt(0)
  phase("validate_set_binding", vctx, msg)
  if vctx:_decided() then return end
  phase("core_final_validation", vctx, msg, ac, vctx)
end

-- A delivery outcome (D, T or P) for every module that wants it; what
-- the callouts return does not matter.
function msys._dispatch_outcome(callout, info)
  for _, m in ipairs(modules) do
    local f = m.tbl[callout]
    if f then f(m.tbl, info) end
  end
end

-- %{vctx_conn:key} and %{vctx_mess:key} from the running call's context.
function msys.expandMacro(text)
  local vctx = current[coroutine.running()]
  return (string.gsub(text, "%%{(vctx_%a+):([^}]*)}", function(kind, key)
    if vctx == nil then return "" end
    if kind == "vctx_conn" then return vctx:get(core.VCTX_CONN, key) or "" end
    if kind == "vctx_mess" then return vctx:get(core.VCTX_MESS, key) or "" end
    return nil
  end))
end
msys.expandMacros = msys.expandMacro

-- Momentum's module names all resolve to the one msys table.
for _, name in ipairs({ "msys.core", "msys.extended.message", "msys.extended.vctx",
                        "msys.extended.ac", "msys.dnsLookup", "msys.counter",
                        "msys.db", "msys.datasource" }) do
  package.preload[name] = function() return msys end
end
