"""poisoning: Nightshade-style concept poisoning, dirty-label and anchor controls, dose sweeps with an independent
judge, defences, attackability studies, and opt-out evaluations at the model level."""
