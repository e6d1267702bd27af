"""mithridate: one console script gathering the command tables of curation, diffusion, poisoning and reports."""
