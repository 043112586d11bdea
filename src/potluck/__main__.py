from potluck.cli.main import main

main()
