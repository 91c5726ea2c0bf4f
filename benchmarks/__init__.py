"""Speed and memory benchmarks, side by side with the plain TRL trainers."""
