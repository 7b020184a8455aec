"""Management routes (users, keys, tokens, metadata), their schemas and the OpenAPI doc."""
