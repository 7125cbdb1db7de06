#!/usr/bin/env bash
# The MCP Inspector CLI (a real external client) against the stdio server: strict schema lint of tools/list,
# then one tools/call of each main tool. Fails on the Inspector's error exit codes (5: isError, 6: schema).
set -euo pipefail
cd "$(dirname "$0")/.."
export MCP_INSPECTOR_SECRET_STORE=memory LITELLM_LOCAL_MODEL_COST_MAP=True HF_HUB_OFFLINE=1
DB=$(mktemp -d)/inspector.db
SERVER=(.venv/bin/skillorchestra-mcp --db "$DB")
I="npx -y @modelcontextprotocol/inspector@2.12.0 --cli"

$I "${SERVER[@]}" --method tools/list --strict --format json -q > /dev/null
echo "inspector: tools/list --strict ok"
$I "${SERVER[@]}" --method tools/call --tool-name consult_handbook --tool-arg text="solve for x: 2x+1=5" \
   --format json -q > /dev/null
echo "inspector: consult_handbook ok"
ROUTE=$($I "${SERVER[@]}" --method tools/call --tool-name route_step \
   --tool-args-json '{"text": "write a python function that reverses a string", "lambda_": 0.1}' --format json -q)
DECISION=$(printf '%s' "$ROUTE" | .venv/bin/python -c \
  'import json,sys; d=json.load(sys.stdin); r=d.get("result", d); print(r["structuredContent"]["decision_id"])')
echo "inspector: route_step ok ($DECISION)"
$I "${SERVER[@]}" --method tools/call --tool-name record_outcome \
   --tool-args-json "{\"decision_id\": \"$DECISION\", \"success\": true}" --format json -q > /dev/null
echo "inspector: record_outcome ok"
for protocol in legacy auto; do
  $I "${SERVER[@]}" --protocol-era "$protocol" --method tools/list --format json -q > /dev/null
  echo "inspector: tools/list over the $protocol era ok"
done
