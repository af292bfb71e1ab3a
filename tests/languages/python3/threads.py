import threading
total = []
threads = [threading.Thread(target=total.append, args=(i,)) for i in range(1, 5)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("threads", sum(total))
