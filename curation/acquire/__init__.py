"""Acquisition: the address guard, HTML and alt text, opt-out signals (robots.txt, ai.txt, TDMRep, X-Robots-Tag,
meta), the crawler, the WARC/WAT/URL-list readers, the img2dataset downloader and its funnel."""
