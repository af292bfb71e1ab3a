a, b = map(int, input().split())
print("", a + b, "", sep="  ", end="\n\n")
