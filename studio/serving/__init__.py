"""Serving: the embedded TGI-compatible endpoint (server/, its own process), the registry of endpoints
the studio started or knows by URL, the HTTP client every caller shares, and chat."""
