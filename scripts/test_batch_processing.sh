#!/usr/bin/env bash
# test_batch_processing.sh -- submit a batch workload to a running batchd, watch it run,
# and print the seed's "Batch Processing Test Results" report from what was measured.
#
#   scripts/test_batch_processing.sh [--jobs=10] [--items-per-job=50]
#       [--models=mixtral,yi34,...]   models to spread the jobs over, round robin
#                                     (default: every model GET /queue/status lists)
#       [--base-url=http://127.0.0.1:8000]   (default $BATCHD_URL, else that address)
#       [--batch-size=N]              options.batch_size (default: the server's)
#       [--priority=normal]           options.priority
#       [--timeout=600]               seconds to wait for every job to end
#       [--max-failed-percent=10]     exit 1 when more jobs than this failed
#       [--target-throughput=1000]    items/minute the verdict compares against (the seed's)
#       [--api-key=KEY]               sent as X-API-Key (default $BATCH_API_KEY)
#       [--json-out=FILE]             also write the measurements as JSON
#       [--poll-interval=0.2]         seconds between status polls
#       [--no-progress]               no progress bar
#
# Needs bash, curl and jq (scripts/deps.sh installs them). The report goes to stdout, the
# progress bar to stderr. Every figure comes from this run: submission times are measured
# by curl, job outcomes, item counts and processing times are read back from the job API,
# error kinds from each failed job's items, recoveries from /debug/job (retried batches),
# and throughput is the items that ended (succeeded or failed) over the wall time from the
# first submission to the moment the last job was seen ending.
#
# Exit status: 0 when every job was accepted and ended and no more than
# --max-failed-percent of them failed; 1 when more failed; 2 when a submission was
# rejected, or jobs did not end within --timeout; 3 on a usage or connection error.
set -euo pipefail
export LC_ALL=C             # printf and jq see "0.5", whatever the caller's locale

jobs=10
items=50
models=""
base="${BATCHD_URL:-http://127.0.0.1:8000}"
batch_size=""
priority=""
timeout_s=600
max_failed_pct=10
target=1000
api_key="${BATCH_API_KEY:-}"
json_out=""
poll=0.2
progress=1

usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "test_batch_processing: $*" >&2; exit 3; }

for arg in "$@"; do
  case "$arg" in
    --jobs=*) jobs=${arg#*=} ;;
    --items-per-job=*) items=${arg#*=} ;;
    --models=*) models=${arg#*=} ;;
    --base-url=*) base=${arg#*=} ;;
    --batch-size=*) batch_size=${arg#*=} ;;
    --priority=*) priority=${arg#*=} ;;
    --timeout=*) timeout_s=${arg#*=} ;;
    --max-failed-percent=*) max_failed_pct=${arg#*=} ;;
    --target-throughput=*) target=${arg#*=} ;;
    --api-key=*) api_key=${arg#*=} ;;
    --json-out=*) json_out=${arg#*=} ;;
    --poll-interval=*) poll=${arg#*=} ;;
    --no-progress) progress=0 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument '$arg'" ;;
  esac
done

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
is_num() { [[ $1 =~ ^[0-9]+(\.[0-9]+)?$ ]]; }
{ is_uint "$jobs" && [ "$jobs" -ge 1 ]; } || die "--jobs must be a positive integer"
{ is_uint "$items" && [ "$items" -ge 1 ]; } || die "--items-per-job must be a positive integer"
[ -z "$batch_size" ] || is_uint "$batch_size" || die "--batch-size must be a positive integer"
is_num "$timeout_s" || die "--timeout must be a number of seconds"
is_num "$max_failed_pct" || die "--max-failed-percent must be a number"
is_num "$target" || die "--target-throughput must be a number"
is_num "$poll" || die "--poll-interval must be a number of seconds"
command -v curl >/dev/null || die "curl is required (scripts/deps.sh)"
command -v jq >/dev/null || die "jq is required (scripts/deps.sh)"

base=${base%/}
base=${base%/api/v1/batch}
api="$base/api/v1/batch"

work=$(mktemp -d "${TMPDIR:-/tmp}/batchtest.XXXXXX")
trap 'rm -rf "$work"' EXIT

curl_args=(-sS --max-time 30 -H 'Accept: application/json')
[ -n "$api_key" ] && curl_args+=(-H "X-API-Key: $api_key")

now() { date +%s.%N; }

# GET path -> stdout (body); fails on transport errors and HTTP >= 400.
api_get() {
  curl "${curl_args[@]}" --fail "$api$1"
}

# ---- models ------------------------------------------------------------------------------

if [ -z "$models" ]; then
  qs=$(api_get /queue/status) || die "cannot read $api/queue/status (is batchd running?)"
  models=$(jq -r '.model_queues | keys_unsorted | join(",")' <<<"$qs")
  [ -n "$models" ] || die "the server lists no models; pass --models="
fi
IFS=, read -r -a model_list <<<"$models"
[ ${#model_list[@]} -ge 1 ] || die "--models is empty"

# ---- submission --------------------------------------------------------------------------

run_tag="$(date -u +%Y%m%dT%H%M%SZ)-$$-$RANDOM"
opts=$(jq -cn --arg bs "$batch_size" --arg pr "$priority" \
  '{} + (if $bs != "" then {batch_size: ($bs|tonumber)} else {} end)
      + (if $pr != "" then {priority: $pr} else {} end)')

: >"$work/submitted.jsonl"
sub_failed=0
t_start=$(now)
for ((i = 0; i < jobs; i++)); do
  model=${model_list[$((i % ${#model_list[@]}))]}
  # Distinct texts per run, so the embedding cache does not answer for the model.
  jq -cn --arg m "$model" --argjson n "$items" --argjson j "$i" --arg tag "$run_tag" \
    --argjson opts "$opts" \
    '{operation: "bulk_embed", model: $m,
      data: [range($n) | {text: "batch processing test \($tag) job \($j) item \(.): the quick brown fox jumps over the lazy dog \(. * 7919 % 1000)"}],
      options: $opts,
      metadata: {submitted_by: "test_batch_processing.sh", run: $tag}}' >"$work/body.json"
  out=$(curl "${curl_args[@]}" -o "$work/resp.json" -w '%{http_code} %{time_total}' \
    -H 'Content-Type: application/json' --data-binary @"$work/body.json" "$api/jobs") ||
    out="000 0"
  read -r code secs <<<"$out"
  if [ "$code" = 202 ] || [ "$code" = 200 ]; then
    jq -c --arg m "$model" --argjson s "$secs" '{job_id, model: $m, submit_s: $s}' \
      "$work/resp.json" >>"$work/submitted.jsonl"
  else
    sub_failed=$((sub_failed + 1))
    echo "test_batch_processing: job $((i + 1)) ($model) rejected: HTTP $code $(head -c 300 "$work/resp.json" 2>/dev/null)" >&2
    echo "{\"job_id\": null, \"model\": \"$model\", \"submit_s\": $secs, \"http\": \"$code\"}" \
      >>"$work/submitted.jsonl"
  fi
done

mapfile -t ids < <(jq -r 'select(.job_id) | .job_id' "$work/submitted.jsonl")

# ---- watching ----------------------------------------------------------------------------

draw_bar() {  # draw_bar <done_items> <total_items> <ended_jobs> <elapsed_s>
  local done=$1 total=$2 ended=$3 el=$4 width=40 fill pct bar
  [ "$progress" = 1 ] || return 0
  if [ "$total" -gt 0 ]; then fill=$((done * width / total)); pct=$((done * 1000 / total)); else
    fill=$width; pct=1000; fi
  bar=$(printf '%*s' "$fill" '' | tr ' ' '#')$(printf '%*s' $((width - fill)) '' | tr ' ' '-')
  if [ -t 2 ]; then
    printf '\r[%s] %3d.%d%%  %d/%d items  %d/%d jobs ended  %.1fs ' "$bar" $((pct / 10)) \
      $((pct % 10)) "$done" "$total" "$ended" "${#ids[@]}" "$el" >&2
  else
    printf '[%s] %3d.%d%%  %d/%d items  %d/%d jobs ended  %.1fs\n' "$bar" $((pct / 10)) \
      $((pct % 10)) "$done" "$total" "$ended" "${#ids[@]}" "$el" >&2
  fi
}

declare -A final=()
deadline=$(jq -n --argjson t "$t_start" --argjson w "$timeout_s" '$t + $w')
last_line=0
t_end=$t_start
: >"$work/final.jsonl"
: >"$work/seen.jsonl"
while :; do
  urls=()
  for id in "${ids[@]}"; do
    [ -n "${final[$id]:-}" ] || urls+=("$api/jobs/$id/status")
  done
  [ ${#urls[@]} -gt 0 ] || break
  # One curl for every job still running (keep-alive), one status object per line.
  curl "${curl_args[@]}" -w '\n' "${urls[@]}" 2>/dev/null |
    jq -c 'select(type == "object" and .job_id != null)' >"$work/poll.jsonl" || true
  cat "$work/poll.jsonl" >>"$work/seen.jsonl"
  while IFS=$'\t' read -r id st; do
    case "$st" in
      completed|failed|cancelled) final[$id]=1 ;;
    esac
  done < <(jq -r '[.job_id, .status] | @tsv' "$work/poll.jsonl")
  jq -c 'select(.status == "completed" or .status == "failed" or .status == "cancelled")' \
    "$work/poll.jsonl" >>"$work/final.jsonl"
  t_now=$(now)
  # Items ended so far: the last status seen of every job.
  read -r done_items _ < <(jq -rs \
    'group_by(.job_id) | map(last) |
     [(map(.progress.processed_items + .progress.failed_items) | add // 0),
      (map(.progress.total_items) | add // 0)] | @tsv' "$work/seen.jsonl")
  ended=${#final[@]}
  elapsed=$(jq -n --argjson a "$t_start" --argjson b "$t_now" '$b - $a')
  if [ -t 2 ] || [ "$ended" = "${#ids[@]}" ] ||
     [ "$(jq -n --argjson e "$elapsed" --argjson l "$last_line" '$e - $l >= 2')" = true ]; then
    draw_bar "$done_items" "$((items * ${#ids[@]}))" "$ended" "$elapsed"
    last_line=$elapsed
  fi
  if [ "$ended" = "${#ids[@]}" ]; then
    t_end=$t_now
    break
  fi
  if [ "$(jq -n --argjson d "$deadline" --argjson n "$t_now" '$n > $d')" = true ]; then
    t_end=$t_now
    break
  fi
  sleep "$poll"
done
[ "$progress" = 1 ] && [ -t 2 ] && echo >&2

# ---- details of jobs with trouble: item error codes, retried batches ----------------------

: >"$work/errors.jsonl"
: >"$work/batches.jsonl"
while IFS=$'\t' read -r id model failed; do
  cursor=""
  while :; do
    page=$(api_get "/jobs/$id/items?status=failed&limit=1000${cursor:+&cursor=$cursor}") || break
    jq -c --arg id "$id" --arg m "$model" \
      '.items[] | {job_id: $id, model: $m, code: (.error.code // "unknown_error")}' \
      <<<"$page" >>"$work/errors.jsonl"
    cursor=$(jq -r 'if .has_more then .next_cursor // "" else "" end' <<<"$page")
    [ -n "$cursor" ] || break
  done
done < <(jq -r 'select(.progress.failed_items > 0) | [.job_id, .model, .progress.failed_items] | @tsv' \
  "$work/final.jsonl")
# A job that failed without item errors (unknown model, timeout...) carries its own code.
jq -c 'select(.status == "failed" and .progress.failed_items == 0 and .error != null) |
       {job_id, model, code: .error.code}' "$work/final.jsonl" >>"$work/errors.jsonl"
# Batches that needed more than one attempt (debug view; optional).
debug_ok=1
for id in "${ids[@]}"; do
  if d=$(api_get "/debug/job/$id" 2>/dev/null); then
    jq -c --arg id "$id" '.batches[]? | {job_id: $id, attempts, failed, status}' <<<"$d" \
      >>"$work/batches.jsonl"
  else
    debug_ok=0
  fi
done
api_metrics=$(api_get /metrics 2>/dev/null || echo null)

# ---- the report ----------------------------------------------------------------------------

jq -n \
  --slurpfile sub "$work/submitted.jsonl" \
  --slurpfile fin "$work/final.jsonl" \
  --slurpfile err "$work/errors.jsonl" \
  --slurpfile bat "$work/batches.jsonl" \
  --argjson metrics "$api_metrics" \
  --argjson jobs "$jobs" --argjson items "$items" --arg models "$models" \
  --argjson t0 "$t_start" --argjson t1 "$t_end" --argjson debug_ok "$debug_ok" \
  --argjson max_failed "$max_failed_pct" --argjson target "$target" '
  def r1: (. * 10 | round) / 10;
  def pct(a; b): if b > 0 then (a * 100 / b) else 0 end;
  ($sub | map(select(.job_id))) as $acc
  | ($fin | group_by(.job_id) | map(last)) as $f
  | ($f | map(select(.status == "completed")) | length) as $completed
  | ($f | map(select(.status == "failed")) | length) as $failed
  | ($f | map(select(.status == "cancelled")) | length) as $cancelled
  | (($acc | length) - ($f | length)) as $unfinished
  | ($f | map(.progress.processed_items) | add // 0) as $ok_items
  | ($f | map(.progress.failed_items) | add // 0) as $failed_items
  | ($f | map(select(.timing.started_at != null) | .timing.total_processing_time_ms / 1000)) as $durations
  | ($t1 - $t0) as $wall
  | ($f | map(.model as $m | {model: $m, s: (.timing.total_processing_time_ms / 1000),
                              ok: .progress.processed_items, bad: .progress.failed_items})) as $per
  | ($per | group_by(.model) | map({model: .[0].model,
        ok: (map(.ok) | add), bad: (map(.bad) | add)}
        | .rate = (if .ok + .bad > 0 then pct(.ok; .ok + .bad) else 100 end))) as $rel
  | ($err | group_by(.code) | map({code: .[0].code, jobs: (map(.job_id) | unique | length),
        models: (map(.model) | unique), items: length})) as $codes
  | ($bat | map(select(.attempts > 1 or .failed > 0))) as $troubled
  | {
      configuration: {total_jobs: $jobs, items_per_job: $items, total_items: ($jobs * $items),
                       models: ($models | split(","))},
      submission: {accepted: ($acc | length), rejected: (($sub | length) - ($acc | length)),
                   acceptance_rate: (pct($acc | length; $jobs) | r1),
                   average_submission_ms: (if ($sub | length) > 0 then ($sub | map(.submit_s) | add) / ($sub | length) * 1000 else 0 end | r1)},
      processing: {completed: $completed, failed: $failed, cancelled: $cancelled,
                   unfinished: $unfinished,
                   items_processed: $ok_items, items_failed: $failed_items,
                   items_total: (($acc | length) * $items),
                   average_job_seconds: (if ($durations | length) > 0 then ($durations | add) / ($durations | length) else 0 end),
                   wall_seconds: $wall,
                   throughput_items_per_minute: (if $wall > 0 then ($ok_items + $failed_items) * 60 / $wall else 0 end | r1),
                   server_throughput_items_per_minute: ($metrics.batch_metrics.performance.average_throughput_items_per_minute // null)},
      performance: {fastest: ($per | min_by(.s)), slowest: ($per | max_by(.s)),
                    most_reliable: ($rel | sort_by(-.rate, -(.ok + .bad)) | first),
                    least_reliable: ($rel | sort_by(.rate, -(.ok + .bad)) | first),
                    models: $rel},
      errors: {by_code: $codes,
               timeout_jobs: ([$codes[] | select(.code == "timeout_error") | .jobs] | add // 0),
               connection_jobs: ([$codes[] | select(.code == "connection_error") | .jobs] | add // 0),
               processing_jobs: ([$codes[] | select(.code == "processing_error") | .jobs] | add // 0),
               batches_with_errors: (if $debug_ok == 1 then ($troubled | length) else null end),
               batches_recovered: (if $debug_ok == 1 then ($troubled | map(select(.failed == 0)) | length) else null end)},
      jobs: ($f | map({job_id, model, status, total_items: .progress.total_items,
                       processed_items: .progress.processed_items,
                       failed_items: .progress.failed_items,
                       total_processing_time_ms: .timing.total_processing_time_ms})),
      max_failed_percent: $max_failed, target_items_per_minute: $target
    }' >"$work/summary.json"

[ -n "$json_out" ] && cp "$work/summary.json" "$json_out"

jq -r '
  def r1: (. * 10 | round) / 10;
  def num: if . == (. | floor) then "\(. | floor)" else "\(.)" end;
  def pct(a; b): if b > 0 then (a * 100 / b | r1 | num) else "0" end;
  def mark(ok): if ok then "✅" else "❌" end;
  def secs: (if . < 10 then (. * 1000 | round) / 1000 else r1 end) | num;
  . as $root | .configuration as $c | .submission as $s | .processing as $p | .performance as $perf
  | .errors as $e
  | ($s.accepted) as $n
  | ($p.completed + $p.failed + $p.cancelled) as $ended
  | ($p.throughput_items_per_minute) as $tput
  | ([$e.by_code[] | select(.code != "timeout_error" and .code != "connection_error" and .code != "processing_error")]) as $other
  | [
    "Batch Processing Test Results:",
    "=============================",
    "",
    "Test Configuration:",
    "- Total Jobs: \($c.total_jobs)",
    "- Items per Job: \($c.items_per_job)",
    "- Total Items: \($c.total_items)",
    "- Models Tested: \($c.models | join(", "))",
    "",
    "Job Submission Results:",
    (if $s.rejected == 0 then "✅ All \($n) jobs submitted successfully"
     else "❌ \($n)/\($c.total_jobs) jobs submitted, \($s.rejected) rejected" end),
    "\(mark($s.rejected == 0)) Queue acceptance rate: \($s.acceptance_rate | num)%",
    "✅ Average submission time: \($s.average_submission_ms | round)ms",
    "",
    "Processing Results:",
    "\(mark($p.completed > 0)) Jobs completed: \($p.completed)/\($n) (\(pct($p.completed; $n))%)",
    "\(mark(pct($p.failed; $n) | tonumber <= $root.max_failed_percent)) Jobs failed: \($p.failed)/\($n) (\(pct($p.failed; $n))%)",
    (if $p.cancelled > 0 then "⚠️ Jobs cancelled: \($p.cancelled)/\($n)" else empty end),
    (if $p.unfinished > 0 then "❌ Jobs not finished in time: \($p.unfinished)/\($n)" else empty end),
    "\(mark($p.items_processed > 0)) Total items processed: \($p.items_processed)/\($p.items_total) (\(pct($p.items_processed; $p.items_total))%)",
    "✅ Average processing time per job: \($p.average_job_seconds | secs) seconds",
    "\(mark($tput > $root.target_items_per_minute)) Average throughput: \($tput | num) items/minute (\($p.items_processed + $p.items_failed) items in \($p.wall_seconds | secs) s\(if $p.server_throughput_items_per_minute != null then "; server, last 5 minutes: \($p.server_throughput_items_per_minute | num)" else "" end))",
    "",
    "Performance Metrics:",
    (if $perf.fastest then "- Fastest job: \($perf.fastest.s | secs) seconds (\($perf.fastest.model))" else "- Fastest job: n/a" end),
    (if $perf.slowest then "- Slowest job: \($perf.slowest.s | secs) seconds (\($perf.slowest.model))" else "- Slowest job: n/a" end),
    ($perf.models | length > 1 and (map(.rate) | min) == (map(.rate) | max)) as $tie
    | (if $perf.most_reliable == null then "- Most reliable model: n/a"
       elif $tie then "- Most reliable model: all \($perf.models | length) models equal (\($perf.most_reliable.rate | r1 | num)% success)"
       else "- Most reliable model: \($perf.most_reliable.model) (\($perf.most_reliable.rate | r1 | num)% success)" end),
    ($perf.models | length > 1 and (map(.rate) | min) == (map(.rate) | max)) as $tie
    | (if $perf.least_reliable == null then "- Least reliable model: n/a"
       elif $tie then "- Least reliable model: none"
       else "- Least reliable model: \($perf.least_reliable.model) (\($perf.least_reliable.rate | r1 | num)% success)" end),
    "",
    "Error Analysis:",
    ($e.by_code | map(select(.code == "timeout_error")) | first // null) as $t
    | "- Timeout errors: \($e.timeout_jobs)\(if $t then " (\($t.models | join(", ")) job\(if $t.jobs > 1 then "s" else "" end), \($t.items) items)" else "" end)",
    ($e.by_code | map(select(.code == "connection_error")) | first // null) as $t
    | "- Connection errors: \($e.connection_jobs)\(if $t then " (\($t.models | join(", ")) job\(if $t.jobs > 1 then "s" else "" end), \($t.items) items)" else "" end)",
    ($e.by_code | map(select(.code == "processing_error")) | first // null) as $t
    | "- Processing errors: \($e.processing_jobs)\(if $t then " (\($t.models | join(", ")) job\(if $t.jobs > 1 then "s" else "" end), \($t.items) items)" else "" end)",
    ($other[] | "- Other errors (\(.code)): \(.jobs) (\(.models | join(", ")) job\(if .jobs > 1 then "s" else "" end), \(.items) items)"),
    (if $e.batches_with_errors == null then "- Recovery successful: n/a (debug view unavailable)"
     else "- Recovery successful: \($e.batches_recovered)/\($e.batches_with_errors) (batches that hit an error and succeeded on a retry)" end),
    "",
    "Overall Assessment:",
    "\(mark($n > 0 and $p.unfinished == 0 and $p.completed > 0)) Batch processing framework \(if $n > 0 and $p.unfinished == 0 and $p.completed > 0 then "operational" else "not operational" end)",
    "\(mark($s.rejected == 0 and $ended == $n)) Job queuing and management \(if $s.rejected == 0 and $ended == $n then "working" else "not working" end)",
    ([.jobs[] | select(.status == "completed" and (.processed_items + .failed_items) != .total_items)] | length) as $bad
    | "\(mark($bad == 0 and $ended > 0)) Progress tracking \(if $bad == 0 and $ended > 0 then "functional" else "inconsistent (\($bad) completed jobs do not add up)" end)",
    (if ($e.by_code | length) == 0 then "✅ Error handling: no item failed"
     else ($e.by_code | max_by(.items) | .code) as $worst
       | "⚠️ Error handling needs improvement for \({"timeout_error": "timeouts", "connection_error": "connection errors", "processing_error": "processing errors"}[$worst] // $worst)" end),
    (if $tput > $root.target_items_per_minute then "✅ Performance meets target (>\($root.target_items_per_minute | num) items/minute achieved)"
     else "❌ Performance below target (\($tput | num) items/minute, target >\($root.target_items_per_minute | num))" end)
  ] | .[]' "$work/summary.json"

# ---- verdict ----------------------------------------------------------------------------------

read -r accepted failed unfinished < <(jq -r \
  '[.submission.accepted, .processing.failed, .processing.unfinished] | @tsv' "$work/summary.json")
if [ "$sub_failed" -gt 0 ] || [ "$unfinished" -gt 0 ]; then
  exit 2
fi
if [ "$(jq -n --argjson f "$failed" --argjson n "$accepted" --argjson m "$max_failed_pct" \
      'if $n > 0 then ($f * 100 / $n) > $m else false end')" = true ]; then
  exit 1
fi
exit 0
