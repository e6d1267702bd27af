"""Selection: caption and image rules, dedup, the do-not-train registry, the `filter` stage, uid subsets, export,
and release/rebuild (split-view integrity)."""
