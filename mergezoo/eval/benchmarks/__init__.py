"""The built-in benchmarks, one subpackage each (digits_domains, text_styles, digits_diffusion).

Importing a subpackage registers its benchmark (see `mergezoo.eval.registry`); the framework
(spec, registry, zoo building, training jobs, evaluation, bench) lives in `mergezoo.eval`.
Adding a benchmark means adding one subpackage with a `Benchmark` subclass decorated with
`@register_benchmark(name)`, and its name in `registry.BUILTIN_MODULES`.
"""
