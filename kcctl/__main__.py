from kcctl.cli import main

main()
