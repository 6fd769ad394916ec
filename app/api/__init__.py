"""The HTTP layer: OpenAI wire types, routes, SSE framing and error mapping. Imports the engine, never the reverse."""
