"""Provider layer: route ids, wire adapters, SSE parsing and the dispatcher."""
