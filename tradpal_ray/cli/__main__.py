"""``python -m tradpal_ray.cli`` is the ``tradpal-ray`` command."""

from tradpal_ray.cli import main

main()
