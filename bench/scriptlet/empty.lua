-- ecbench: the empty policy. Every phase's callout is there and returns
-- VALIDATE_CONT, so this measures what calling Lua costs.
local mod = {}
local CONT = msys.core.VALIDATE_CONT
function mod:validate_connect(ac, vctx) return CONT end
function mod:validate_ehlo(str, ac, vctx) return CONT end
function mod:validate_mailfrom(str, ac, vctx) return CONT end
function mod:validate_rcptto(msg, str, ac, vctx) return CONT end
function mod:validate_data_spool(msg, ac, vctx) return CONT end
function mod:validate_set_binding(msg) return CONT end
msys.registerModule("policy", mod)
