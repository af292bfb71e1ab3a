package main

func main() { panic("failing") }
