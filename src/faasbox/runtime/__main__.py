import sys

from faasbox.runtime.worker import main

main(sys.argv)
