import sys,mmap
img=sys.argv[1]; needles=[]
for k in sys.argv[2:]:
    if k.startswith('text:'): needles.append((k, k[5:].encode()))
    else:
        b=bytes.fromhex(k); needles.append(('key-raw',b[:32])); needles.append(('key-hex',k[:64].encode())); needles.append(('key-HEX',k[:64].upper().encode()))
with open(img,'rb') as f:
    m=mmap.mmap(f.fileno(),0,access=mmap.ACCESS_READ)
    for name,n in needles:
        i=m.find(n)
        print(f"scan {name}: {'FOUND at %d'%i if i>=0 else 'not found'}")
