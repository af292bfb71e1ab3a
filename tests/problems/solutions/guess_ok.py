low, high = 1, 10**9
while low <= high:
    guess = (low + high) // 2
    print(guess, flush=True)
    answer = input().strip()
    if answer == "=":
        break
    if answer == "<":
        high = guess - 1
    else:
        low = guess + 1
