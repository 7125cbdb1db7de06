"""`python -m skillorchestra.server` = `skillorchestra-mcp`."""

from skillorchestra.server.cli import serve_main

serve_main()
