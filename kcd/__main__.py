from kcd.cli import main

main()
