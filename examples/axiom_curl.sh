#!/usr/bin/env sh
# The Local Axiom API's curl example, against your own adyton server.
#
#   adyton serve                                   # 127.0.0.1:8756, with adyton-axiom installed
#   AXIOM_ACCOUNT_NUMBER=<64 digits> sh examples/axiom_curl.sh ["your question"]
#
# ADYTON_URL    server base URL            (default http://127.0.0.1:8756)
# AXIOM_MODEL   model name or alias        (default qwen3_4b; alias it on the server with
#               ADYTON_MODELS__ALIASES='{"qwen3_4b": "smollm2-135m-instruct"}' or use a model id)
# Without adyton-limits on the server any 64 digits are accepted; with it, the
# number must belong to an enabled account.
#
# Answer: {"message": "<assistant reply>"}; errors: {"error": "...", "code": "...", "field": ...}
set -eu

URL="${ADYTON_URL:-http://127.0.0.1:8756}"
MODEL="${AXIOM_MODEL:-qwen3_4b}"
ACCOUNT="${AXIOM_ACCOUNT_NUMBER:-}"
QUESTION="${1:-Write a Python web server}"

case "$ACCOUNT" in
  *[!0-9]*|"") echo "set AXIOM_ACCOUNT_NUMBER to your 64-digit account number" >&2; exit 2 ;;
esac
if [ "${#ACCOUNT}" -ne 64 ]; then
  echo "AXIOM_ACCOUNT_NUMBER must be exactly 64 digits (it has ${#ACCOUNT})" >&2; exit 2
fi

# JSON-escape the question (backslashes, quotes, control characters) with python if present
if command -v python3 >/dev/null 2>&1; then
  CONTENT=$(printf '%s' "$QUESTION" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))')
else
  CONTENT="\"$(printf '%s' "$QUESTION" | sed 's/\\/\\\\/g; s/"/\\"/g')\""
fi

curl -sS -X POST "$URL/api/chat" \
  -H "Content-Type: application/json" \
  -d "{
  \"model\": \"$MODEL\",
  \"sessionId\": \"$ACCOUNT\",
  \"system_prompt\": \"You are a helpful programming assistant\",
  \"messages\": [
    {
      \"role\": \"user\",
      \"content\": $CONTENT
    }
  ]
}"
echo
