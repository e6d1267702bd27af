"""The demo world: the embedded emoji art corpus and the loopback web that serves it (artist sites with opt-out
profiles, aggregators, a link farm, broken files)."""
