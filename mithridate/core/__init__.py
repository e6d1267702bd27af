"""The shared core every package imports for framework needs: stage configs and the command-table CLI
(`options`, `commands`), file schemas (`schema`), atomic writes and folder locks (`files`), worker processes
(`workers`), checkpoint reading and writing (`checkpoint`), the device and bf16 choice (`compute`), and the
training loops' learning-rate schedule and curves (`lr`, `curves`)."""
