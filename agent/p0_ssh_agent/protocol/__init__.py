"""Wire formats (pure): JSON-RPC 2.0 framing and braekhus's ForwardedRequest/ForwardedResponse."""
