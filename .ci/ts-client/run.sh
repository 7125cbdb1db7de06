#!/usr/bin/env bash
# The official TypeScript MCP SDK client (@modelcontextprotocol/sdk, pinned exactly in package.json and
# package-lock.json) against the server over stdio, streamable HTTP and SSE, as Claude Desktop, Claude Code,
# Cursor and most IDE hosts embed it: see check.mjs for what it checks.
# Prints one summary line per transport (and each failed or warned check above them); exit status 1 on any
# failed check. Extra arguments go to check.mjs (--transport stdio|http|sse, --json FILE, --verbose).
# VENV overrides the Python environment holding the server (default: the repository's .venv).
set -euo pipefail
cd "$(dirname "$0")"
REPO=$(cd ../.. && pwd)
export LITELLM_LOCAL_MODEL_COST_MAP=True HF_HUB_OFFLINE=1
npm ci --silent --no-audit --no-fund
exec node check.mjs --venv "${VENV:-$REPO/.venv}" "$@"
