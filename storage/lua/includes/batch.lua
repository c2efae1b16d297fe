-- What batched scripts share (BatchScript, storage/scripts.py); prepended after
-- library.lua to those only.
--
-- A batched call holds several calls of one script: ARGV[1] their number n,
-- ARGV[2i] and ARGV[2i+1] call i's number of keys and of arguments, then every call's
-- arguments in order; KEYS every call's keys in order.

-- Run `step(KEYS, ARGV)` for each call of the batch with that call's own keys and
-- arguments, each apart (pcall): an error in one (a broken document) is that call's
-- outcome, {-1, the error} (BATCH_FAILED), and the calls after it still run. Returns
-- {0, {outcome, ...}} (BatchStatus.BATCHED), one outcome a call, in order.
local function run_batch(step)
  local n = tonumber(ARGV[1])
  local out, k, a = {}, 0, 2 * n + 1
  for i = 1, n do
    local nk, na = tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1])
    local ok, outcome = pcall(step, {unpack(KEYS, k + 1, k + nk)}, {unpack(ARGV, a + 1, a + na)})
    if not ok then
      outcome = {-1, type(outcome) == 'table' and outcome.err or tostring(outcome)}
    end
    out[i] = outcome
    k, a = k + nk, a + na
  end
  return {0, out}
end
