"""The HTTP edge: request parsing, responses, problem documents and the HTTP models."""
