package main

func main() { return undefinedName }
