"""Test support: emulated APIs, HTTP servers on 127.0.0.1, generated PDFs, a real wiki, shared helpers."""
