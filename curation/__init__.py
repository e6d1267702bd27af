"""curation: crawl pages or read WARC/WAT/URL lists for image–alt-text pairs, download them, curate them."""
