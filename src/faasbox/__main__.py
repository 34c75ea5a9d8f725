from faasbox.cli import main

main()
