"""`python -m nexus_kernel`: the `nexus` command, as torchrun starts it
(`torchrun --nproc-per-node N -m nexus_kernel run ...`)."""

from nexus_kernel.cli import main

main()
