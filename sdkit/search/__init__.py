"""Verifier-guided search: x0 previews of candidates while they denoise (`previews`), search strategies."""
