from cpcrl.app import main

main()
