# Replays strace logs of tools run one after another on one device (or file)
# and reports, per log, reads of 4 KiB blocks never written before and
# writes that do not cover whole never-written blocks (the block-device page
# cache reads those first). fallocate(ZERO_RANGE|PUNCH_HOLE) and BLKZEROOUT
# count as writes.
# usage: iomap.py TARGET SIZE PREWRITE(start:end,...|-) TRACE...
import re,sys
target=sys.argv[1]; size=int(sys.argv[2]); B=4096
written=set()
if sys.argv[3]!='-':
    for p in sys.argv[3].split(','):
        a,b=map(int,p.split(':')); a=a if a>=0 else size+a; b=b if b>0 else size+b
        written.update(range(a//B,(b+B-1)//B))
def fmt(o): return "%d (end-%d)"%(o,size-o) if o>size//2 else str(o)
def blocks(o,n): return range(o//B,(o+n+B-1)//B)
for path in sys.argv[4:]:
    fdpath={}; pos={}; bad=[]; partial=[]; nr=nw=0; wb=zb=rb=0
    for line in open(path):
        m=re.search(r'open(?:at)?\((?:AT_FDCWD, )?"([^"]+)".*\) = (\d+)',line)
        if m: fdpath[m.group(2)]=m.group(1); pos[m.group(2)]=0; continue
        m=re.search(r'lseek\((\d+), (-?\d+), SEEK_\w+\) = (\d+)',line)
        if m: pos[m.group(1)]=int(m.group(3)); continue
        m=re.search(r'fallocate\((\d+), [A-Z_|]+, (\d+), (\d+)\) = 0',line)
        if m and fdpath.get(m.group(1))==target:
            o,n=int(m.group(2)),int(m.group(3)); zb+=n; written.update(blocks(o,n)); continue
        m=re.search(r'ioctl\((\d+), BLKZEROOUT, \[(\d+), (\d+)\]\) = 0',line)
        if m and fdpath.get(m.group(1))==target:
            o,n=int(m.group(2)),int(m.group(3)); zb+=n; written.update(blocks(o,n)); continue
        m=re.search(r'\b(pread64|pwrite64)\((\d+), .*, (\d+), (\d+)\) = (\d+)',line)
        if m: op,fd,o,n=m.group(1),m.group(2),int(m.group(4)),int(m.group(5))
        else:
            m=re.search(r'\b(read|write)\((\d+), .*\) = (\d+)',line)
            if not m: continue
            op,fd,n=m.group(1),m.group(2),int(m.group(3)); o=pos.get(fd,0); pos[fd]=o+n
        if fdpath.get(fd)!=target or n==0: continue
        if op in('pread64','read'):
            nr+=1; rb+=n
            miss=[b for b in blocks(o,n) if b not in written]
            if miss: bad.append((o,n,len(miss)))
        else:
            nw+=1; wb+=n
            for b in blocks(o,n):
                if b not in written and (o>b*B or o+n<(b+1)*B): partial.append((o,n))
                written.add(b)
    print("%s: %d reads (%.1f MiB), %d writes (%.1f MiB), zeroed %.1f MiB"%(path,nr,rb/2**20,nw,wb/2**20,zb/2**20))
    print("  reads touching never-written blocks: %d"%len(bad))
    for o,n,k in bad[:12]: print("     read @%s len %d (%d unwritten blocks)"%(fmt(o),n,k))
    print("  partial writes onto never-written blocks: %d"%len(partial))
    for o,n in partial[:8]: print("     write @%s len %d"%(fmt(o),n))
