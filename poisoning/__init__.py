"""poisoning: Nightshade-style concept poisoning and opt-out evaluations (built in part 4; no commands yet)."""
