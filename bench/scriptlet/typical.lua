-- ecbench: a typical policy: the binding by sender domain, and one header.
local mod = {}
local by_domain = { ["mkt.test"] = "mkt1", ["ecbench.test"] = "tx1" }
function mod:validate_data_spool(msg, ac, vctx)
  msg:header("X-Policy", "checked", "append")
  return msys.core.VALIDATE_CONT
end
function mod:validate_set_binding(msg)
  local binding = by_domain[msg:mailfrom():match("@(.+)$") or ""]
  if binding then msg:binding(binding) end
  return msys.core.VALIDATE_CONT
end
msys.registerModule("policy", mod)
