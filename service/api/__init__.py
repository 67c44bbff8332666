"""HTTP adapters: routers, dependencies and the error-to-problem table. No torch here."""
