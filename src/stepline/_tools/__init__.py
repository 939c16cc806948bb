"""The tools the server runs: HTTP tools, Python functions, MCP servers, and who gets which.

``registry`` holds every server tool (its schema, how it runs) and checks a
call's arguments; ``http`` calls an HTTP tool; ``mcp_tools`` and ``mcp`` list
and call MCP servers. What the tools read of a request they declare
themselves (``mcp_tools.RequestMcpServer``): they import nothing of the wire.
"""
