from lit_ptm.cli import main

main()
