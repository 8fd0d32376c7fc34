"""`digits-domains`: image classification over (digit group x domain) cells (see `.benchmark`)."""

from mergezoo.eval.benchmarks.digits_domains.benchmark import (DOMAINS, GROUPS, HELD_IN, NAME,
                                                               DigitsDomains, load_sources, render)

__all__ = ["DOMAINS", "GROUPS", "HELD_IN", "NAME", "DigitsDomains", "load_sources", "render"]
