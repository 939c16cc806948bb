"""The tools the server runs: HTTP tools, Python functions, MCP servers, and who gets which."""
