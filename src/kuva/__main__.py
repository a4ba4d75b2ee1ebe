from kuva.cli import main

main()
